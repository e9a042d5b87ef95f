"""Model analysis: FLOPs that count the selective scan and the attention (``tools/analysis/get_flops.py``)."""
from .flops import (Complexity, ComplexityReport, ExtraCounts, ExtraFlopCounter, attention_flops, count_complexity,
                    cross_selective_scan_flops, format_table, giga, selective_scan_flops, summary_row)

__all__ = [
    'count_complexity', 'Complexity', 'ComplexityReport', 'ExtraFlopCounter', 'ExtraCounts', 'selective_scan_flops',
    'cross_selective_scan_flops', 'attention_flops', 'format_table', 'giga', 'summary_row'
]
