"""sarcart.models"""
