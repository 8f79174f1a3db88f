"""sarcart.training"""
