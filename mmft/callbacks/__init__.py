"""mmft/callbacks"""
