"""marlctl.envs"""
