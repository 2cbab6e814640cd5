"""Transfer Studio: the dashboard's entry point. It only navigates; the pages live in pages/, the work in core/."""
import streamlit as st

from pages import ui

st.set_page_config(page_title="Transfer Studio", page_icon=":material/model_training:", layout="wide")

ICONS = {"pages/home.py": ":material/home:", "pages/models.py": ":material/neurology:",
         "pages/dataset.py": ":material/photo_library:", "pages/configure.py": ":material/tune:",
         "pages/train.py": ":material/monitoring:", "pages/runs.py": ":material/history:",
         "pages/evaluate.py": ":material/fact_check:"}
page = st.navigation([st.Page(path, title=title, icon=ICONS[path], default=path == "pages/home.py")
                      for path, title in ui.PAGES.items()])
sidebar = st.sidebar.container()  # filled after the page ran, so it shows what the page just did
try:
    with ui.routed():
        page.run()
except ui.PageDone:  # the page ended early on purpose (no data yet, say)
    pass
finally:
    ui.sidebar(sidebar)
