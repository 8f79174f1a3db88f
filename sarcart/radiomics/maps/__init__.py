"""Fast voxel-wise radiomics feature maps (PyTorch), agreeing with pyradiomics' voxel-based mode.

Public API: :func:`compute_feature_maps` (arrays), :class:`MapSettings`, :data:`FEATURES`; the
volume/file-level helpers live in :mod:`sarcart.radiomics.maps.io`.
"""

from sarcart.radiomics.maps.engine import MapResult, compute_feature_maps
from sarcart.radiomics.maps.settings import FEATURES, MapSettings, parse_feature_list, resolve_features

__all__ = ["FEATURES", "MapResult", "MapSettings", "compute_feature_maps", "parse_feature_list", "resolve_features"]
