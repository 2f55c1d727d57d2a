"""The shell that acts: Kopf's watch in, the tracker's routing, sends, status writes,
finalizers, TTL and history, leader election, metrics.  It applies what the core
decides and decides nothing itself.
"""
