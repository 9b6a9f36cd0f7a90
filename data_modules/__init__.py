"""data_modules"""
