"""sarcart.dose"""
