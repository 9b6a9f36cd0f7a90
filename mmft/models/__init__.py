"""mmft/models"""
