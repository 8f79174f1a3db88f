"""sarcart.inference"""
