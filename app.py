"""Transfer Studio: the dashboard's entry point (navigation only; the pages live in pages/)."""
import streamlit as st

st.set_page_config(page_title="Transfer Studio", layout="wide")

home = st.Page("pages/home.py", title="Transfer Studio", default=True)
st.navigation([home]).run()
