"""The UI's entry script (`coe ui`, or `streamlit run ui/app.py`): page set-up, the pool, the pages."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ui` importable however streamlit is started

import streamlit as st

from ui.workbench import keep_alive, pool_picker, workbench

st.set_page_config(page_title="coe: compare experts", page_icon=":material/hub:", layout="wide")
page = st.navigation(
    [
        st.Page("compare.py", title="Compare", icon=":material/compare_arrows:", default=True),
        st.Page("experts.py", title="Experts", icon=":material/groups:"),
        st.Page("evaluations.py", title="Evaluations", icon=":material/leaderboard:"),
        st.Page("traffic.py", title="Traffic", icon=":material/monitoring:"),
    ]
)
st.sidebar.title("coe")
st.sidebar.caption("Composition of Experts: route each question to the right experts, fuse their answers.")
keep_alive()
pool_picker(workbench())
page.run()
