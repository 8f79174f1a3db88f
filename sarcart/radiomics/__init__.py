"""sarcart.radiomics"""
