"""Placeholder home page until the guided pages land: what exists, what is coming."""
import pandas as pd
import streamlit as st

from core.catalog import list_catalog

st.title("Transfer Studio")
st.write("Fine-tune a pretrained image model on your own labelled images. The engine is ready from the "
         "command line (`python -m core train DATA`); the guided pages are coming next:")
st.markdown("1. **Models**: compare backbones\n2. **Dataset**: upload, audit, split\n3. **Configure**\n"
            "4. **Train**: live plots\n5. **Runs**\n6. **Evaluate**")
st.subheader("Backbones available")
rows = pd.DataFrame(list_catalog())[["name", "source", "params_m", "input_size", "imagenet_top1", "license",
                                     "available", "availability"]]
st.dataframe(rows, hide_index=True)
