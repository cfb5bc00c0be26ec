"""The Label Studio bridge: one server per workspace in its own venv (``server``), the images it may
serve (``files``), checked labeling configs (``configs``), verification rounds that route, push and
pull (``rounds``), and agreement (``agreement``)."""
