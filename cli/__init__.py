"""marlctl.cli"""
