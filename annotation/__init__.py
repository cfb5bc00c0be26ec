"""The Label Studio bridge: the server in its own venv (``server``), checked labeling configs
(``configs``), verification rounds that route, push and pull (``rounds``), and agreement
(``agreement``)."""
