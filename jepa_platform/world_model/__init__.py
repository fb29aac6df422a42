"""World models and planning: environments, trajectory collection, planners (CEM, iCEM, MPPI, gradient), costs
with guardrails, the MPC loop and ``jepa plan``. The world model itself is an objective (``ac_jepa``)."""
