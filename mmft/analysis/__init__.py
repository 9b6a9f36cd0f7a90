"""mmft/analysis"""
