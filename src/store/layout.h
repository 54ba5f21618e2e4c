/*
 * layout.h — the data directory's file names, in one place.
 *
 * A data directory DIR holds:
 *   DIR/shard-<N>.db     the SQLite store of shard N (N decimal, no sign, no
 *                        leading zero unless "0"), with its -wal and -shm
 *   DIR/shard-<N>.journal/journal/  the journal of shard N when kobod runs
 *                        the journaled store (--journal on; src/store/hot):
 *                        its segments, NNNN….seg (src/store/journal)
 *   DIR/shard-map.json   which shard owns each partition (src/shard/map_file.c)
 *   DIR/kobod.lock       flock'd by the one kobod (or `kobo audit`) using DIR
 *
 * kobod, `kobo audit`, the shard map and the tests build these names here
 * and nowhere else.
 */
#ifndef KOBO_STORE_LAYOUT_H
#define KOBO_STORE_LAYOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KOBO_LAYOUT_MAP_FILE "shard-map.json"
#define KOBO_LAYOUT_LOCK_FILE "kobod.lock"

/* Writes DIR/shard-<shard>.db, DIR/shard-map.json or DIR/kobod.lock into
 * out[0..out_len). false when it does not fit (out then holds a truncated,
 * NUL-terminated prefix). */
bool kobo_layout_shard_path(char *out, size_t out_len, const char *dir,
                            uint32_t shard);
/* DIR/shard-<shard>.journal: the directory the journal of shard `shard`
 * lives in (kobo_journal_open adds its own "journal" folder). */
bool kobo_layout_journal_dir(char *out, size_t out_len, const char *dir,
                             uint32_t shard);
bool kobo_layout_map_path(char *out, size_t out_len, const char *dir);
bool kobo_layout_lock_path(char *out, size_t out_len, const char *dir);

/* true when name (a file name in DIR, no directory part) is a shard file,
 * with its number in *shard. Any such name counts, however large its
 * number (up to 9 digits): a file the shard map must explain. */
bool kobo_layout_shard_file(const char *name, long *shard);

#endif /* KOBO_STORE_LAYOUT_H */
