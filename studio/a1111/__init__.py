"""The AUTOMATIC1111-compatible API under ``/sdapi/v1`` on the studio's app, for the clients that speak it
(Open WebUI's Automatic1111 engine, SillyTavern, painting plugins): ``routes`` (the router), ``bodies`` (its
request bodies), ``translate`` (a body to ONE ``GenerationRequest``), ``answers`` (A1111's response shapes),
``auth`` (Bearer or Basic keys, the ``Caller``), ``callers`` (per-caller checkpoint and jobs), ``sampling``
(sampler names), ``errors`` (A1111's error shape).
"""
