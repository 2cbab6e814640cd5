"""The dashboard's pages (one script per page, run by st.navigation in app.py) and their shared helpers:
`ui` (workspace, job manager, session state, sidebar, errors) and `charts` (plotly figures)."""
