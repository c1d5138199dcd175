"""marlctl.trainer"""
