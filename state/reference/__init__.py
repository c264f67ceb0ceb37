"""The per-transaction reference of the feature kernels: plain Python, one event at a time.

The stream and the offline replay run the batch kernels (:mod:`state.kernels`); this
package is what the tests hold them to, bit for bit (features and encoded state),
river-style: every aggregate against a brute force over the full event list
(``tests/unit/state/test_reference.py``), and the kernels against these classes
over random event sequences split into random batches
(``tests/unit/state/test_kernels.py``). Nothing in the product imports it.
"""
