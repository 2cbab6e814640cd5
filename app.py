"""Transfer Studio: the dashboard's entry point. It only navigates; the pages live in pages/, the work in core/."""
import os

import streamlit as st

from pages import sidebar, state, ui

# a local file: with a ":material/...:" page icon the browser fetches the icon from Google's font CDN, which
# our servers cannot reach
ICON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "icon.png")
st.set_page_config(page_title="Transfer Studio", page_icon=ICON, layout="wide")

if not ui.signed_in():  # a server with a login: nothing but the sign-in form until then
    # every page's address leads to the form (a bookmark of /evaluate opens there once signed in)
    st.navigation([st.Page(ui.sign_in, title="Sign in", default=True)]
                  + [st.Page(lambda: ui.sign_in(), title=entry.title,
                             url_path=os.path.splitext(os.path.basename(path))[0])
                     for path, entry in ui.PAGES.items() if path != "pages/home.py"], position="hidden").run()
    st.stop()
ui.account_bar()  # who is signed in; a warning on every page when the server is open to the network
pages = {path: st.Page(path, title=entry.title, icon=entry.icon, default=path == "pages/home.py")
         for path, entry in ui.PAGES.items()}
page = st.navigation(list(pages.values()))
page_file = next(path for path, p in pages.items() if p.url_path == page.url_path)
state.restore_state()  # a new session (a reload, another tab): the user's place, and what the address names
slot = st.sidebar.container()  # filled after the page ran, so it shows what the page just did
try:
    with ui.routed():
        page.run()
except ui.PageDone:  # the page ended early on purpose (no data yet, say)
    pass
finally:
    sidebar.show(slot)
state.keep_state()  # not after st.rerun / st.switch_page: the run they start saves it
state.show_in_address(page_file)
