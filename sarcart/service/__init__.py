"""sarcart.service"""
