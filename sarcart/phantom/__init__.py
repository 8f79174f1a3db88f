"""sarcart.phantom"""
