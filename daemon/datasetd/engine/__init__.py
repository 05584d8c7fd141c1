"""The reactor: `executor` plans, runs steps in bounded pools, records and re-plans until converged;
`steps` maps each action type to how it runs and how its result is recorded.
"""
