"""Settings from flags and STUDIO_* environment variables."""

import pytest

from studio.config import Settings


def test_ui_logins_parse_from_the_flag_and_the_environment(monkeypatch):
    settings = Settings.from_args(["--ui-auth", "ann:se:cret, bob:x"])
    assert settings.ui_auth == [("ann", "se:cret"), ("bob", "x")]  # only the first colon splits
    assert Settings.from_args([]).ui_auth == []
    monkeypatch.setenv("STUDIO_UI_AUTH", "cy:pw")
    assert Settings.from_args([]).ui_auth == [("cy", "pw")]


@pytest.mark.parametrize("value", ["just-a-password", "ann:", ":pw", "ann:pw,bob"])
def test_a_bad_login_names_its_place_and_never_echoes_it(value, capsys):
    with pytest.raises(SystemExit) as exited:
        Settings.from_args(["--ui-auth", value])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "--ui-auth" in error and "must be USER:PASSWORD" in error
    assert value.split(",")[-1] not in error  # the entry itself is not printed: it may be a password
