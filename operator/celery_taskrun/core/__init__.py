"""The pure core: every decision (what to send, what a record means, what the status
becomes, when to look again), with the clock as an argument.  No I/O.
"""
