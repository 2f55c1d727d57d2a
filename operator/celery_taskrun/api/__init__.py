"""The API types and generated artefacts: the TaskRun model, the bounds of what
status holds, the operator's configuration, and the CRD and the configuration
reference generated from them.  No I/O.
"""
