"""marlctl.agents"""
