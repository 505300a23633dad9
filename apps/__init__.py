"""Demos and runners that start servers of several packages (plant, twin, controller): the only code that does.

``apps.runner`` runs the closed loop against a plant service and a twin it starts; ``apps.control`` is the
``alutwin control`` command over it; ``apps.system_demo`` is ``make demo`` (the whole system, the online
worker included); ``apps.online_demo`` re-fits a surrogate through a drift.
"""
