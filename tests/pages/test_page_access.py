"""The dashboard behind a login, and loud when it is open to the network without one (AppTest)."""
import pytest
from streamlit import config as st_config

from core.access import PASSWORD_VAR, ADMINS_VAR
from pages import ui
from test_pages import finished, finished_run, open_page, shown, texts, workspace  # noqa: F401 (fixtures)

PAGES = list(ui.PAGES)


@pytest.fixture
def exposed(monkeypatch):
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    yield
    st_config.set_option("server.address", before)


def _sign_in(at, name: str, password: str):
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    next(b for b in at.button if b.label == "Sign in").click()
    return at.run()


def test_every_page_waits_for_the_team_password(workspace, monkeypatch, exposed):
    monkeypatch.setenv(PASSWORD_VAR, "s3cret")
    at = open_page()
    assert not at.exception
    assert [t.label for t in at.text_input] == ["Your name", "Team password"]
    assert "Sign in" in [b.label for b in at.button] and [t.value for t in at.title] == ["Transfer Studio"]
    for page in PAGES:  # no page is there to go to before signing in
        with pytest.raises(ValueError, match=r"Known pages: \['Sign in'"):
            at.switch_page(page)
    at = _sign_in(at, "carol", "wrong")
    assert [e.value for e in at.error] == ["Wrong password."]
    at = _sign_in(at, "carol", "s3cret")
    assert not at.exception and not at.error
    assert "Signed in as carol" in shown("\n".join(c.value for c in at.sidebar.caption))
    assert "Train a demo model now" in [b.label for b in at.button]


def test_open_to_the_network_without_a_login_says_so_on_every_page_and_refuses_training(workspace, exposed):
    for page in PAGES:
        at = open_page(page)
        assert not at.exception, page
        assert any("reachable from other machines and has no login" in e.value for e in at.error), page
    home = open_page()
    assert next(b for b in home.button if b.label == "Train a demo model now").disabled
    assert "Training is turned off" in texts(home)


def test_a_user_sees_only_their_own_runs_and_an_admin_sees_all(finished, monkeypatch, exposed):
    ws, run = finished  # recorded before logins: no owner, so an admin's
    monkeypatch.setenv(PASSWORD_VAR, "s3cret")
    monkeypatch.setenv(ADMINS_VAR, "ada")
    carol = open_page("pages/runs.py", {ui.USER: "carol"})
    assert not carol.exception and "No runs yet" in texts(carol)
    ada = open_page("pages/runs.py", {ui.USER: "ada"})
    assert not ada.exception and run["id"] in "\n".join(str(s.options) for s in ada.selectbox)
