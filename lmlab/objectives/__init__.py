"""Objectives: what is optimized, one file each, all one protocol (``base.Objective``); found by task name."""
