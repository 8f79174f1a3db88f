"""sarcart.adapt"""
