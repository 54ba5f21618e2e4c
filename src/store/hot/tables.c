/*
 * tables.c — the three in-memory tables of a journaled shard (tables.h has
 * the contract; store_hot.c is the one user and holds its lock around them).
 *
 * hot_accounts  records[] of kobo_account, calloc'd at capacity (pages are
 *               touched only as accounts arrive), indexed by the core id
 *               table (core.h: accounts are never removed, which is the one
 *               removal pattern it cannot do). Metadata is copied into a
 *               chunked arena that only grows: nothing of an account's
 *               metadata ever changes, so no per-account buffer is freed
 *               before destroy and one malloc serves many accounts.
 *
 * hot_recent    a pool of capacity entries (calloc'd, so only the high-water
 *               mark of entries in use is ever touched; freed entries are
 *               reused newest first from a free list), found through a
 *               chained hash (bucket heads + a next link in each entry, so
 *               any entry can be unlinked without tombstones) and threaded
 *               on a doubly linked FIFO list in seq order: a put appends or
 *               moves its entry to the tail, drop_upto pops the head. seq
 *               never goes down (asserted), so the list stays sorted by seq.
 *               Metadata up to RECENT_METADATA_INLINE bytes is copied into
 *               the entry itself (a put then allocates nothing); longer
 *               metadata gets its own malloc, freed when the entry is
 *               replaced or dropped.
 *
 * hot_idset     a power-of-two array of uint64 keyed hashes (XXH3-64 with a
 *               seed from getrandom(2)), 0 meaning empty (a hash of 0 is
 *               stored as 1), linear probing, no removal. The array is
 *               created at least 4/3 of the capacity, so a full set is at
 *               most 3/4 loaded and a probe always ends at an empty slot.
 *
 * Links inside hot_recent are entry index + 1, so that 0 (what calloc
 * leaves) is "none" everywhere.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <xxhash.h>

#include "tables.h"

/* A random 64-bit seed for a keyed hash. KOBO_OK, or KOBO_ENOMEM when the
 * kernel gives no randomness (not expected on Linux >= 3.17; a create
 * reports it as a resource failure rather than run with a guessable seed). */
static int random_seed(uint64_t *seed)
{
	unsigned char bytes[sizeof(*seed)];
	size_t got = 0;
	while (got < sizeof(bytes)) {
		ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return KOBO_ENOMEM;
		}
		got += (size_t)n;
	}
	memcpy(seed, bytes, sizeof(*seed));
	return KOBO_OK;
}

/* The id of a record: NUL-terminated inside its array (asserted, since a
 * record without one is a caller's bug, and strlen would run off it). */
static size_t id_length(const char *id, size_t size)
{
	size_t len = strnlen(id, size);
	kobo_assert(len < size);
	return len;
}

/* ======================================================================
 * hot_accounts
 * ====================================================================== */

/* Metadata arena chunk. A chunk holds many accounts' metadata; one longer
 * than ARENA_CHUNK_BYTES gets a chunk of its own size. */
#define ARENA_CHUNK_BYTES (64u * 1024u)

typedef struct arena_chunk {
	struct arena_chunk *next;
	size_t size;
	size_t used;
	char bytes[];
} arena_chunk;

struct hot_accounts {
	kobo_account *records; /* capacity records, the first count in use */
	kobo_id_table *index;  /* id -> index into records */
	uint32_t capacity;
	uint32_t count;
	arena_chunk *chunks;   /* newest first; chunks->bytes is filled next */
};

static const char *account_key(const void *records, uint32_t slot)
{
	return ((const kobo_account *)records)[slot].id;
}

int hot_accounts_create(uint32_t capacity, hot_accounts **out)
{
	if (capacity == 0 || capacity > KOBO_ID_TABLE_CAPACITY_MAX || out == NULL)
		return KOBO_EINVAL;
	hot_accounts *accounts = calloc(1, sizeof(*accounts));
	if (accounts == NULL)
		return KOBO_ENOMEM;
	accounts->records = calloc(capacity, sizeof(*accounts->records));
	if (accounts->records == NULL) {
		free(accounts);
		return KOBO_ENOMEM;
	}
	int rc = kobo_id_table_create(capacity, account_key, accounts->records,
	                              &accounts->index);
	if (rc != KOBO_OK) {
		free(accounts->records);
		free(accounts);
		return rc;
	}
	accounts->capacity = capacity;
	*out = accounts;
	return KOBO_OK;
}

void hot_accounts_destroy(hot_accounts *accounts)
{
	if (accounts == NULL)
		return;
	arena_chunk *chunk = accounts->chunks;
	while (chunk != NULL) {
		arena_chunk *next = chunk->next;
		free(chunk);
		chunk = next;
	}
	kobo_id_table_destroy(accounts->index);
	free(accounts->records);
	free(accounts);
}

const kobo_account *hot_accounts_find(const hot_accounts *accounts, const char *id)
{
	uint32_t slot;
	if (kobo_id_table_find(accounts->index, id, &slot) != KOBO_OK)
		return NULL;
	return &accounts->records[slot];
}

/* Room for len bytes in the arena, or NULL (nothing changed). A chunk too
 * small for len is left as it is; the unused tail of a chunk is the only
 * waste (< 4 KiB of 64 KiB with metadata's 4 KiB limit). */
static char *arena_reserve(hot_accounts *accounts, size_t len)
{
	arena_chunk *chunk = accounts->chunks;
	if (chunk != NULL && chunk->size - chunk->used >= len) {
		char *at = chunk->bytes + chunk->used;
		chunk->used += len;
		return at;
	}
	size_t size = len > ARENA_CHUNK_BYTES ? len : ARENA_CHUNK_BYTES;
	arena_chunk *fresh = malloc(sizeof(*fresh) + size);
	if (fresh == NULL)
		return NULL;
	fresh->size = size;
	fresh->used = len;
	if (chunk != NULL && size > ARENA_CHUNK_BYTES) {
		/* An outsized chunk goes behind the current one, which keeps
		 * filling. */
		fresh->next = chunk->next;
		chunk->next = fresh;
	} else {
		fresh->next = chunk;
		accounts->chunks = fresh;
	}
	return fresh->bytes;
}

int hot_accounts_put(hot_accounts *accounts, const kobo_account *account)
{
	id_length(account->id, sizeof(account->id));
	uint32_t slot;
	if (kobo_id_table_find(accounts->index, account->id, &slot) == KOBO_OK) {
		kobo_account *stored = &accounts->records[slot];
		/* An account's currency never changes (store.h guarantee 4);
		 * a put saying otherwise is a bug upstream. */
		kobo_assert(strcmp(stored->currency, account->currency) == 0);
		stored->posted = account->posted;
		stored->pending_out = account->pending_out;
		stored->pending_in = account->pending_in;
		return KOBO_OK;
	}
	if (accounts->count >= accounts->capacity)
		return KOBO_EFULL;
	kobo_assert(account->metadata != NULL || account->metadata_len == 0);
	/* A zero-length metadata still gets a non-NULL pointer (ledger.h:
	 * "never NULL"); one byte of arena is the simplest such pointer. */
	size_t reserve = account->metadata_len > 0 ? account->metadata_len : 1;
	char *metadata = arena_reserve(accounts, reserve);
	if (metadata == NULL)
		return KOBO_ENOMEM;
	if (account->metadata_len > 0)
		memcpy(metadata, account->metadata, account->metadata_len);
	slot = accounts->count;
	kobo_account *stored = &accounts->records[slot];
	*stored = *account;
	stored->metadata = metadata;
	/* Cannot fail: the count was checked against the same capacity. */
	int rc = kobo_id_table_insert(accounts->index, stored->id, slot);
	kobo_assert(rc == KOBO_OK);
	accounts->count++;
	return KOBO_OK;
}

uint32_t hot_accounts_count(const hot_accounts *accounts)
{
	return accounts->count;
}

uint32_t hot_accounts_capacity(const hot_accounts *accounts)
{
	return accounts->capacity;
}

/* ======================================================================
 * hot_recent
 * ====================================================================== */

#define RECENT_CAPACITY_MAX (1u << 28)

/* Metadata this long or shorter lives inside the entry (the entry is then
 * 720 bytes: kobo_transfer is 560). 128 bytes covers "{}" and the usual
 * small object (an order id, a reference or two) without a malloc per put;
 * each inline byte costs 1 MiB per million entries whether used or not
 * (build/measure/hot-tables: 1 M entries of 2-byte metadata hold 623 MiB
 * with no inline buffer, 837 MiB with 256 bytes). A malloc'd buffer is
 * also slower to take and, freed, stays in the process's heap. */
#define RECENT_METADATA_INLINE 128u

typedef struct recent_entry {
	kobo_transfer transfer;  /* transfer.metadata: inline or heap */
	uint64_t seq;
	uint64_t hash;
	uint32_t chain_next;     /* next in the bucket's chain, or free list */
	uint32_t older;          /* FIFO neighbours (index + 1, 0 = none) */
	uint32_t newer;
	char metadata_inline[RECENT_METADATA_INLINE];
} recent_entry;

struct hot_recent {
	recent_entry *entries; /* capacity entries, calloc'd */
	uint32_t *buckets;     /* head of each chain (index + 1) */
	uint32_t bucket_mask;
	uint32_t capacity;
	uint32_t count;
	uint32_t used;         /* entries ever handed out (high-water mark) */
	uint32_t free_list;    /* freed entries, via chain_next */
	uint32_t oldest;       /* FIFO head and tail */
	uint32_t newest;
	uint64_t last_seq;     /* the seq of the last successful put */
	uint64_t seed;
};

static inline recent_entry *recent_at(const hot_recent *recent, uint32_t link)
{
	return &recent->entries[link - 1];
}

static inline uint64_t recent_hash(const hot_recent *recent, const char *id,
                                   size_t len)
{
	return XXH3_64bits_withSeed(id, len, recent->seed);
}

int hot_recent_create(uint32_t capacity, hot_recent **out)
{
	if (capacity == 0 || capacity > RECENT_CAPACITY_MAX || out == NULL)
		return KOBO_EINVAL;
	hot_recent *recent = calloc(1, sizeof(*recent));
	if (recent == NULL)
		return KOBO_ENOMEM;
	if (random_seed(&recent->seed) != KOBO_OK) {
		free(recent);
		return KOBO_ENOMEM;
	}
	/* One bucket per entry at least (chains average <= 1 long). */
	uint32_t bucket_count = 16;
	while (bucket_count < capacity)
		bucket_count *= 2;
	recent->entries = calloc(capacity, sizeof(*recent->entries));
	recent->buckets = calloc(bucket_count, sizeof(*recent->buckets));
	if (recent->entries == NULL || recent->buckets == NULL) {
		hot_recent_destroy(recent);
		return KOBO_ENOMEM;
	}
	recent->bucket_mask = bucket_count - 1;
	recent->capacity = capacity;
	*out = recent;
	return KOBO_OK;
}

static void metadata_release(recent_entry *entry)
{
	if (entry->transfer.metadata != entry->metadata_inline)
		free((char *)entry->transfer.metadata);
	entry->transfer.metadata = NULL;
}

void hot_recent_destroy(hot_recent *recent)
{
	if (recent == NULL)
		return;
	if (recent->entries != NULL) {
		for (uint32_t link = recent->oldest; link != 0;) {
			recent_entry *entry = recent_at(recent, link);
			link = entry->newer;
			metadata_release(entry);
		}
	}
	free(recent->entries);
	free(recent->buckets);
	free(recent);
}

/* The link of id's entry, or 0. */
static uint32_t recent_lookup(const hot_recent *recent, const char *id,
                              uint64_t hash)
{
	uint32_t link = recent->buckets[hash & recent->bucket_mask];
	while (link != 0) {
		const recent_entry *entry = recent_at(recent, link);
		if (entry->hash == hash && strcmp(entry->transfer.id, id) == 0)
			return link;
		link = entry->chain_next;
	}
	return 0;
}

const kobo_transfer *hot_recent_find(const hot_recent *recent, const char *id,
                                     uint64_t *seq)
{
	size_t len = strnlen(id, KOBO_ID_LEN_MAX + 1);
	if (len > KOBO_ID_LEN_MAX)
		return NULL; /* no stored id is that long */
	uint32_t link = recent_lookup(recent, id, recent_hash(recent, id, len));
	if (link == 0)
		return NULL;
	const recent_entry *entry = recent_at(recent, link);
	if (seq != NULL)
		*seq = entry->seq;
	return &entry->transfer;
}

static void fifo_unlink(hot_recent *recent, uint32_t link)
{
	recent_entry *entry = recent_at(recent, link);
	if (entry->older != 0)
		recent_at(recent, entry->older)->newer = entry->newer;
	else
		recent->oldest = entry->newer;
	if (entry->newer != 0)
		recent_at(recent, entry->newer)->older = entry->older;
	else
		recent->newest = entry->older;
	entry->older = entry->newer = 0;
}

static void fifo_append(hot_recent *recent, uint32_t link)
{
	recent_entry *entry = recent_at(recent, link);
	entry->older = recent->newest;
	entry->newer = 0;
	if (recent->newest != 0)
		recent_at(recent, recent->newest)->newer = link;
	else
		recent->oldest = link;
	recent->newest = link;
}

int hot_recent_put(hot_recent *recent, const kobo_transfer *transfer, uint64_t seq)
{
	kobo_assert(seq >= recent->last_seq);
	size_t len = id_length(transfer->id, sizeof(transfer->id));
	kobo_assert(transfer->metadata != NULL || transfer->metadata_len == 0);
	uint64_t hash = recent_hash(recent, transfer->id, len);
	uint32_t link = recent_lookup(recent, transfer->id, hash);
	if (link == 0 && recent->count >= recent->capacity)
		return KOBO_EFULL;

	/* Everything that can fail comes before the first change. */
	char *heap = NULL;
	if (transfer->metadata_len > RECENT_METADATA_INLINE) {
		heap = malloc(transfer->metadata_len);
		if (heap == NULL)
			return KOBO_ENOMEM;
		memcpy(heap, transfer->metadata, transfer->metadata_len);
	}

	recent_entry *entry;
	const char *old_metadata = NULL;
	if (link != 0) {
		entry = recent_at(recent, link);
		old_metadata = entry->transfer.metadata;
		fifo_unlink(recent, link);
	} else {
		if (recent->free_list != 0) {
			link = recent->free_list;
			recent->free_list = recent_at(recent, link)->chain_next;
		} else {
			kobo_assert(recent->used < recent->capacity);
			link = ++recent->used;
		}
		entry = recent_at(recent, link);
		entry->hash = hash;
		uint32_t *bucket = &recent->buckets[hash & recent->bucket_mask];
		entry->chain_next = *bucket;
		*bucket = link;
		recent->count++;
	}
	/* transfer may be the entry itself (a caller putting back what find
	 * gave it): copy the metadata before the old buffer goes, memmove for
	 * the inline buffer onto itself, and the struct copy onto itself is
	 * an exact overlap, which C allows. */
	if (heap == NULL && transfer->metadata_len > 0)
		memmove(entry->metadata_inline, transfer->metadata,
		        transfer->metadata_len);
	entry->transfer = *transfer;
	entry->transfer.metadata = heap != NULL ? heap : entry->metadata_inline;
	if (old_metadata != NULL && old_metadata != entry->metadata_inline)
		free((char *)old_metadata);
	entry->seq = seq;
	fifo_append(recent, link);
	recent->last_seq = seq;
	return KOBO_OK;
}

/* Takes the oldest entry out of its chain and the list, onto the free list. */
static void recent_drop_oldest(hot_recent *recent)
{
	uint32_t link = recent->oldest;
	recent_entry *entry = recent_at(recent, link);
	uint32_t *prev = &recent->buckets[entry->hash & recent->bucket_mask];
	while (*prev != link) {
		kobo_assert(*prev != 0); /* every entry in the list is in its chain */
		prev = &recent_at(recent, *prev)->chain_next;
	}
	*prev = entry->chain_next;
	fifo_unlink(recent, link);
	metadata_release(entry);
	entry->chain_next = recent->free_list;
	recent->free_list = link;
	recent->count--;
}

size_t hot_recent_drop_upto(hot_recent *recent, uint64_t upto)
{
	size_t dropped = 0;
	while (recent->oldest != 0 && recent_at(recent, recent->oldest)->seq <= upto) {
		recent_drop_oldest(recent);
		dropped++;
	}
	return dropped;
}

uint32_t hot_recent_count(const hot_recent *recent)
{
	return recent->count;
}

uint32_t hot_recent_capacity(const hot_recent *recent)
{
	return recent->capacity;
}

/* ======================================================================
 * hot_idset
 * ====================================================================== */

#define IDSET_CAPACITY_MAX (UINT64_C(1) << 32)

struct hot_idset {
	uint64_t *slots; /* keyed hashes, 0 = empty */
	uint64_t mask;   /* slot count - 1 */
	uint64_t capacity;
	uint64_t count;
	uint64_t seed;
};

int hot_idset_create(uint64_t capacity, hot_idset **out)
{
	if (capacity == 0 || capacity > IDSET_CAPACITY_MAX || out == NULL)
		return KOBO_EINVAL;
	hot_idset *set = calloc(1, sizeof(*set));
	if (set == NULL)
		return KOBO_ENOMEM;
	if (random_seed(&set->seed) != KOBO_OK) {
		free(set);
		return KOBO_ENOMEM;
	}
	/* The next power of two >= capacity * 4 / 3 (rounded up), so a full
	 * set is at most 3/4 loaded and always has an empty slot. */
	uint64_t want = (capacity * 4 + 2) / 3;
	uint64_t slot_count = 1;
	while (slot_count < want)
		slot_count *= 2;
	kobo_assert(slot_count > capacity);
	set->slots = calloc(slot_count, sizeof(*set->slots));
	if (set->slots == NULL) {
		free(set);
		return KOBO_ENOMEM;
	}
	set->mask = slot_count - 1;
	set->capacity = capacity;
	*out = set;
	return KOBO_OK;
}

void hot_idset_destroy(hot_idset *set)
{
	if (set == NULL)
		return;
	free(set->slots);
	free(set);
}

static inline uint64_t idset_key(const hot_idset *set, const char *id)
{
	uint64_t hash = XXH3_64bits_withSeed(id, strlen(id), set->seed);
	return hash != 0 ? hash : 1;
}

bool hot_idset_maybe_contains(const hot_idset *set, const char *id)
{
	uint64_t key = idset_key(set, id);
	for (uint64_t index = key & set->mask;; index = (index + 1) & set->mask) {
		uint64_t slot = set->slots[index];
		if (slot == key)
			return true;
		if (slot == 0)
			return false;
	}
}

int hot_idset_add(hot_idset *set, const char *id)
{
	uint64_t key = idset_key(set, id);
	uint64_t index = key & set->mask;
	for (;; index = (index + 1) & set->mask) {
		uint64_t slot = set->slots[index];
		if (slot == key)
			return KOBO_OK;
		if (slot == 0)
			break;
	}
	if (set->count >= set->capacity)
		return KOBO_EFULL;
	set->slots[index] = key;
	set->count++;
	return KOBO_OK;
}

bool hot_idset_room(const hot_idset *set, uint64_t n)
{
	return n <= set->capacity - set->count;
}

uint64_t hot_idset_count(const hot_idset *set)
{
	return set->count;
}

uint64_t hot_idset_capacity(const hot_idset *set)
{
	return set->capacity;
}
