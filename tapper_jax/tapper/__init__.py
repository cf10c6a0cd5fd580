"""TAP-PER itself: record bank, temporal attention, user prefix table, composition.

Knows nothing of LaMP files: it receives record texts, days and user ids.
"""

from tapper_jax.tapper.attention import TemporalAttention
from tapper_jax.tapper.bank import RecordBank, embed_texts
from tapper_jax.tapper.model import PersonalizedLM, Tapper, lm_loss
from tapper_jax.tapper.prefix import PrefixTable, UserPrefixTable
