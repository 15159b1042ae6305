"""The Streamlit comparison UI (`coe ui`): a face over coe's public API. Every number it shows comes
from a Composer, a stored profile, a stored run or the service's request log; nothing in `coe`
imports it."""
