"""mmft/metrics"""
