"""Owners on their own (studio.owners): the bounded metric label, the tally, who may see owners."""

from __future__ import annotations

from types import SimpleNamespace

from studio.backend import OwnerStatus
from studio.config import Settings
from studio.owners import METRIC_OWNERS, OTHER, labelled, may_see_owners, tally


def test_metrics_label_the_top_owners_and_sum_the_rest_as_other():
    values = {f"client-{index}": float(index) for index in range(1, 31)}
    shown = labelled(values)
    assert len(shown) == METRIC_OWNERS + 1
    assert set(shown) - {OTHER} == {f"client-{index}" for index in range(21, 31)}  # the largest by value
    assert shown[OTHER] == sum(range(1, 21))
    assert sum(shown.values()) == sum(values.values())  # nothing lost, nothing counted twice
    assert labelled({"ann": 2.0, "bob": 1.0}) == {"ann": 2.0, "bob": 1.0}  # few owners: no "other"


def test_tally_counts_each_owner_s_jobs_on_top_of_a_backend_s():
    job = lambda owner: SimpleNamespace(owner=owner)  # noqa: E731
    counts = tally(queued=[job("ann"), job("ann"), job("bob")], running=[job("bob")], downloading=[job("cy")],
                   also=[OwnerStatus("ann", running=1)])
    assert counts == (OwnerStatus("ann", queued=2, running=1), OwnerStatus("bob", queued=1, running=1),
                      OwnerStatus("cy", downloading=1))


def test_owners_are_shown_to_keys_and_admins_or_to_all_on_an_open_server():
    guarded = Settings(api_key="ci:k", ui_auth=[("ann", "a"), ("root", "r")], ui_admins=["root"])
    assert may_see_owners(guarded, api_key_sent=True, login=None)
    assert may_see_owners(guarded, api_key_sent=False, login="root")
    assert not may_see_owners(guarded, api_key_sent=False, login="ann")
    assert not may_see_owners(guarded, api_key_sent=False, login=None)
    assert may_see_owners(Settings(), api_key_sent=False, login=None)  # nobody is told apart: everyone may
