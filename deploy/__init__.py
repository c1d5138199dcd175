"""marlctl.deploy"""
