"""sarcart.radiomics: ROI features (pyradiomics), fast voxel-wise feature maps (PyTorch), IBSI 2 filters,
habitats, the hypoxia risk model and the dose-painting prescription map. See docs/radiomics.md."""
