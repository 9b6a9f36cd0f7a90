"""data_modules/formats"""
