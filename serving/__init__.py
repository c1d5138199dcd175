"""marlctl.serving"""
