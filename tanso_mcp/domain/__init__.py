"""Pure domain rules: no I/O, no database, no clock reads (``now`` is always passed in).

Modules: ``money`` (exact Decimal parsing, rounding, minor/micro/credit units),
``periods`` (UTC calendar-month periods, proration ratios), ``rules`` (plan-feature rule
``valueJson`` models and parsing), ``pricing`` (usage/graduated charges, reset vs
accumulate), ``cost`` (event cost chain, model price table), ``proration`` (upgrade and
cancellation lines), ``credits`` (coverage, pool/grant allocation, rollover, plan credit
allocations), ``limits`` (``max_usage`` checks), ``margins`` (gross margin, status, MRR).
"""
