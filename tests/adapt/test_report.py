"""Reports are self-contained: every embedded figure decodes to the PNG saved beside the page."""

from __future__ import annotations

import base64
import re
from io import BytesIO

import numpy as np
from PIL import Image

from sarcart.adapt.figures import dvh_png, overlay_png
from sarcart.adapt.report import Report
from sarcart.io.geometry import Geometry, Volume


def test_report_embeds_the_saved_figures(tmp_path) -> None:
    g = Geometry((40, 30, 12), (1.5, 1.5, 3.0))
    img = Volume(np.random.default_rng(0).normal(100, 10, g.shape).astype(np.float32), g)
    gtv = np.zeros(g.shape, bool)
    gtv[15:25, 10:20, 4:8] = True
    dose = np.where(gtv, 48.0, 10.0).astype(np.float32)
    r = Report("fx01", tmp_path)
    r.heading("Contours")
    r.figure("overlay", overlay_png(img, {"GTV": gtv}, wash=dose, wash_label="Gy"), caption="dose")
    d = np.linspace(0, 50, 51)
    r.figure("dvh", dvh_png({"today": {"GTV": (d, 100 * (d <= 48))}}))
    r.table([{"structure": "GTV", "D95 (Gy)": 47.9, "met": True}])
    page = r.write().read_text()
    assert "NOT FOR CLINICAL USE" in page and "<td>47.9</td>" in page and "<td>yes</td>" in page
    embedded = dict(re.findall(r"id='fig-(\w+)' alt='\w+' src='data:image/png;base64,([^']+)'", page))
    assert set(embedded) == {"overlay", "dvh"}
    for name, data in embedded.items():
        raw = base64.b64decode(data)
        assert raw == (tmp_path / "figures" / f"{name}.png").read_bytes()
        assert Image.open(BytesIO(raw)).size[0] > 300
