"""Benchmarks that print their figures side by side with the baseline each issue names.

Every comparison runs its contenders interleaved in the same process run, so machine
noise hits all of them alike, and reports ratios next to the absolute times.
"""
