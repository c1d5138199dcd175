"""marlctl.proto"""
