"""Every limit jstorrent keeps, in one frozen dataclass.

Each field has its default and one line of why. Command-line flags build a Config with
`dataclasses.replace`; no module hard-codes a number that belongs here. Sections are grouped by the
module that reads them.
"""

from __future__ import annotations

import dataclasses

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

BLOCK_SIZE = 16 * KiB  # the protocol's request unit; every client requests 16 KiB and many refuse more


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    # --- bencode (core/bencode.py) -------------------------------------------------------------
    # Deepest nesting accepted: real torrents nest 4-5 levels; bencodepy dies near 500.
    bencode_max_depth: int = 64
    # Largest bencoded input decoded at all: a .torrent of 10,000s of files is a few MiB.
    bencode_max_size: int = 64 * MiB

    # --- metainfo (core/metainfo.py) -----------------------------------------------------------
    # Largest .torrent file read: real ones with hundreds of thousands of pieces stay under 20 MiB.
    max_torrent_file_size: int = 64 * MiB
    # Smallest and largest piece length accepted: clients use 16 KiB..16 MiB, libtorrent's corpus has
    # 32767 x 16 KiB. Pieces are never held in memory whole (write-through, hashed in 1 MiB reads).
    min_piece_length: int = BLOCK_SIZE
    max_piece_length: int = 512 * MiB
    # Most pieces accepted: 20 bytes of hash each, so 4 M pieces is an 80 MiB `pieces` string.
    max_piece_count: int = 4_000_000
    # Most files in one torrent: keeps per-file tables bounded.
    max_file_count: int = 1_000_000
    # Largest total size (2**53 keeps every offset exact in a float and within any filesystem).
    max_total_size: int = 2**53
    # How many "name.N.ext" variants we try to disambiguate duplicate paths before giving up.
    max_duplicate_renames: int = 1000
    # Longest file or directory name kept (UTF-8 bytes): filesystems allow 255; headroom for ".N" renames.
    max_path_element_bytes: int = 240
    # A name truncated to the limit above keeps its extension when it is at most this long (".tar.gz").
    max_kept_extension_bytes: int = 16

    # --- batch list (core/batchlist.py: `get -i FILE`) --------------------------------------------
    # Largest input list read: 16 MiB holds ~100,000 magnet lines; more is a mistake, not a list.
    batch_list_max_bytes: int = 16 * MiB
    # Longest line: magnets with many trackers run to a few KiB; 64 KiB leaves room and bounds a bad file.
    batch_list_max_line: int = 64 * KiB
    # Most items in one list (each keeps a result row until the end).
    batch_list_max_items: int = 100_000

    # --- create (jstorrent create) -------------------------------------------------------------
    # Piece length "auto" aims at about this many pieces, within the bounds below.
    create_target_pieces: int = 1500
    create_min_auto_piece_length: int = 16 * KiB
    create_max_auto_piece_length: int = 16 * MiB
    # Worker threads hashing in parallel (SHA-1 releases the GIL); 2 cores here.
    hash_threads: int = 2

    # --- peer wire (core/wire.py) --------------------------------------------------------------
    # Largest request we make and accept: the de facto block size.
    block_size: int = BLOCK_SIZE
    # Largest non-piece message accepted (an extended handshake or a bitfield of a 4M-piece torrent).
    max_message_length: int = 1 * MiB + 64
    # Handshake must complete within this long (DESIGN: handshake 10 s).
    handshake_timeout: float = 10.0
    # Outgoing TCP connect deadline (DESIGN: connect 15 s).
    connect_timeout: float = 15.0
    # A connection with no byte received for this long is dropped (DESIGN: silence 120 s).
    silence_timeout: float = 120.0
    # We send a keep-alive after this long without sending anything (DESIGN: 60 s).
    keepalive_interval: float = 60.0
    # The reqq we advertise in the extended handshake: how many requests we queue for a peer.
    advertised_reqq: int = 500

    # --- scheduler (core/scheduler.py, core/picker.py) -----------------------------------------
    # Global unflushed-data budget: requested-not-received + received-not-written. Big enough for
    # 500 MB/s x ~0.1 s of disk latency, small enough to be harmless on a small machine.
    max_unflushed_bytes: int = 64 * MiB
    # Per-peer request limit starts here (slow start) and grows by one per block received.
    peer_limit_initial: int = 4
    # Per-peer limit bounds: never below 2 (keeps the pipe busy), never above 500 (libtorrent's reqq).
    peer_limit_min: int = 2
    peer_limit_max: int = 500
    # After slow start the limit is rate x this many seconds of queue / block size.
    peer_queue_seconds: float = 2.0
    # Request deadline: mean + k x deviation of the peer's request-to-block time, clamped.
    request_timeout_k: float = 4.0
    request_timeout_min: float = 2.0
    request_timeout_max: float = 60.0
    # A peer with requests out and no block for this long is snubbed (limit 1).
    snub_timeout: float = 20.0
    # Endgame: at most this many peers hold the same block at once.
    endgame_max_dups: int = 3
    # Endgame: a peer duplicates others' requests only while it has fewer than this many requests out,
    # and only up to that many, so equal peers do not copy the whole tail (the demo wasted 14 % without).
    endgame_peer_requests: int = 4
    # New piece starts are capped at this many partial pieces per connected peer...
    partial_pieces_per_peer: float = 1.5
    # ...or this many bytes of partial pieces, whichever is larger.
    partial_pieces_bytes: int = 32 * MiB
    # A peer that contributed to this many failed pieces (not alone) is banned.
    hash_fail_ban_threshold: int = 3
    # Request deadline before a peer has any measured request-to-block time (then the adaptive one).
    request_timeout_initial: float = 10.0
    # Smoothing gains of the request-to-block mean and deviation (RFC 6298's 1/8 and 1/4).
    request_time_gain: float = 0.125
    request_dev_gain: float = 0.25
    # A peer's download rate is measured over windows of this length (short: limits follow quickly).
    peer_rate_window: float = 1.0
    # After a REJECT or a timeout, that peer is not asked for that piece again for this long.
    piece_retry_delay: float = 10.0
    # Released requests (choke, timeout, cut) remembered per peer, so a late block from it still counts
    # as asked for; a block it was never asked for is waste. One full pipeline (peer_limit_max).
    released_requests_kept: int = 500

    # --- choker (core/choker.py) ---------------------------------------------------------------
    # Upload slots: 3 by rate + 1 optimistic (BEP 3 practice).
    upload_slots: int = 4
    # Re-evaluate choking this often.
    choke_interval: float = 10.0
    # Rotate the optimistic unchoke this often.
    optimistic_interval: float = 30.0

    # --- trackers (core/announce.py, tasks/tracker.py) -----------------------------------------
    # Peers asked of a tracker per announce.
    numwant: int = 200
    # Most peers accepted from one response; the rest are ignored (a hostile tracker sends 100,000).
    max_peers_per_response: int = 2000
    # Largest tracker response body read (bytes); more is a tracker error.
    max_tracker_response: int = 2 * MiB
    # HTTP announce deadline.
    tracker_timeout: float = 15.0
    # UDP: first retransmission after this long, doubling, at most this many tries (BEP 15 says
    # 15 x 2^n up to 8 tries; far too long for a command-line tool).
    udp_initial_timeout: float = 2.0
    udp_max_tries: int = 4
    # A UDP connection id is valid for this long (BEP 15: one minute).
    udp_connection_id_lifetime: float = 60.0
    # Interval used when a tracker gives none, and bounds on what it may ask.
    default_announce_interval: float = 1800.0
    min_announce_interval: float = 30.0
    # When every peer is gone, re-announce after this long instead of waiting for the interval.
    dry_swarm_reannounce: float = 30.0
    # Retry a failed tracker after this long, doubling up to the max.
    tracker_retry_initial: float = 15.0
    tracker_retry_max: float = 900.0
    # The final `stopped` announce may take this long before we give up and exit.
    stopped_announce_deadline: float = 3.0
    # A tracker asking for a longer interval than this is re-announced to anyway: peers come and go.
    max_announce_interval: float = 3600.0
    # Largest UDP datagram read from a tracker: no UDP payload is bigger than 65,507 bytes.
    udp_max_datagram: int = 65536
    # HTTP trackers may redirect (http -> https, moved hosts); a longer chain is a tracker error.
    tracker_max_redirects: int = 3

    # --- session (tasks/) -----------------------------------------------------------------------
    # Peers connected per torrent at most (aria2: --bt-max-peers 55; ours 50).
    max_peers: int = 50
    # Default listen port range, first free one wins (as BitTorrent clients traditionally do).
    listen_port_min: int = 6881
    listen_port_max: int = 6999
    # Facts waiting for the scheduler: bounded, so a busy scheduler pushes back on sockets and disk.
    inbox_capacity: int = 1024
    # Commands queued for one peer's writer; a full outbox means the peer stopped reading: drop it.
    peer_outbox_capacity: int = 8192
    # Largest receive from a peer socket: 1 MiB per wakeup keeps per-block overhead low (a 256 KiB
    # receive cost 25 % more CPU per GiB on loopback; docs/performance.md).
    peer_recv_size: int = 1 * MiB
    # A connection's receive buffer starts this small (slow peers never need more) and doubles while
    # receives fill it, up to peer_recv_size.
    peer_recv_initial: int = 64 * KiB
    # Requests from one peer queued for upload; more are rejected (fast) or ignored. Matches reqq.
    upload_queue_per_peer: int = 500
    # The scheduler gets a Tick this often (request deadlines, snubbing, rates, choking).
    tick_interval: float = 0.5
    # A finished peer task may wait this long to tell the scheduler it is gone (shutdown safety).
    peer_gone_deadline: float = 1.0
    # An address that failed to connect is retried after this long, doubling up to the max.
    connect_retry_initial: float = 5.0
    connect_retry_max: float = 300.0
    # Rates shown and used by the choker are smoothed over about this many seconds.
    rate_smoothing: float = 2.0
    # Ctrl-C / SIGTERM: the session stops within this long (DESIGN: 2 s).
    interrupt_grace: float = 2.0
    # Of that grace, the final `stopped` announce gets at most this long (the rest: resume state, closing).
    stopped_announce_cap: float = 1.0
    # Rate limits in bytes/s (0: none): --max-upload-limit / --max-download-limit (token buckets).
    max_upload_rate: int = 0
    max_download_rate: int = 0
    # A limited bucket holds at most this many seconds of its rate (the largest burst allowed).
    rate_limit_burst: float = 1.0
    # With a download limit, the scheduler keeps at most this many seconds of the rate requested at once:
    # requests then wait in our own limiter for about this long, far below request_timeout_min, so they
    # do not time out there and bar their pieces (a sole holder would then sit idle for piece_retry_delay).
    download_rate_request_window: float = 1.0
    # Queued upload requests read from disk together and sent in one write (fewer loop wakeups per block):
    # 64 blocks = 1 MiB, one read hop and one send (16 gave 4x the hops; demo A/B in docs/performance.md).
    upload_batch_blocks: int = 64
    # With --max-upload-limit a batch holds at most this many seconds of the rate (at least one block): the
    # limiter is charged per batch, so a 1 MiB batch at 100 KiB/s would send nothing for 10 s, then burst.
    upload_rate_batch_window: float = 0.25

    # --- batch (tasks/batch.py: several torrents in one process) ---------------------------------
    # -j: downloads running at once (aria2c's --max-concurrent-downloads default is 5).
    max_concurrent_downloads: int = 5
    # Shared budget: an item above its fair share (budget / items using it) gets no more while another
    # item waits for room. Smallest share: one block, so a waiting item can always make one request.
    budget_min_share: int = BLOCK_SIZE
    # Live batch view: the busiest items shown one line each; the rest are counted as "(+N)".
    batch_view_rows: int = 5

    # --- storage (tasks/storage.py) ------------------------------------------------------------
    # Open file handles kept (LRU): far below the usual 1024-descriptor limit, leaving room for sockets.
    max_open_files: int = 64
    # Worker threads writing to disk at once: a few overlap disk latency; more only thrash the disk.
    disk_threads: int = 4
    # How a new file gets its space: none (grow as written), sparse (ftruncate at open, instant),
    # full (posix_fallocate: slow to start on big files, so never the default).
    file_allocation: str = "sparse"
    # Most bytes taken into one writer thread hop: bounds how long BlocksWritten waits for a batch.
    write_batch_max_bytes: int = 8 * MiB
    # Read-back for hashing goes in slices of this size, so a 256 MiB piece never sits in memory.
    hash_read_size: int = 1 * MiB
    # A hasher hop takes the queued pieces up to this many bytes: with 16 KiB pieces a hop per piece
    # cost the trio thread ~100 us each (thread wake-up and result back); 4 MiB is ~2 ms of SHA-1.
    hash_batch_bytes: int = 4 * MiB

    # --- resume, verify, selection (core/resume.py, tasks/resume_store.py, tasks/verify.py) -----
    # The resume state is rewritten at most this often (s): bounds fsync load, loses <= 1 s of work.
    resume_save_interval: float = 1.0
    # Largest resume state file read (a 4M-piece bitfield is 512 KiB; 1M files x ~30 bytes): more is corrupt.
    resume_max_state_bytes: int = 64 * MiB
    # Nesting accepted in a resume state (it nests 3 levels); deeper is corrupt, not a recursion.
    resume_max_depth: int = 4
    # verify: each worker-thread hop hashes whole pieces until at least this many bytes (small
    # pieces would otherwise pay a thread hop each; 4 MiB is ~2 ms of SHA-1).
    verify_batch_bytes: int = 4 * MiB

    # --- diagnostics (core/diagnose.py) --------------------------------------------------------------
    # --stall-report-after: no block for this long while wanted data is missing is a stall (report it).
    stall_report_after: float = 30.0
    # --stall-timeout: end the download (exit 2) after this long without a block; None: never (aria2's default).
    stall_timeout: float | None = None
    # A stall report lists at most this many piece ranges per reason (the rest is counted, not shown).
    stall_report_max_ranges: int = 12
    # ...and at most this many peers per reason and idle peers (a swarm of 50 must fit on a screen).
    stall_report_max_peers: int = 8
    # The session looks for a stall (and refreshes the -v live classification) this often (seconds).
    stall_check_interval: float = 1.0
    # A SIGUSR1 state dump lists at most this many started pieces (the rest is counted).
    state_dump_max_pieces: int = 64
    # --log-json: the log file's write buffer (bytes): a few thousand records per write, so the log costs
    # about one write call per MiB instead of one per fact.
    log_json_buffer: int = 1 * MiB

    # --- display (ui/) ---------------------------------------------------------------------------
    # Live view refresh rate (Hz): 4 is smooth enough and costs ~1 % of a core with pre-formatted Text.
    refresh_hz: float = 4.0
    # Plain-line view: one status line this often (seconds).
    plain_interval: float = 5.0
    # --json: one progress record this often (seconds); scripts want steady ticks, not a flood.
    json_interval: float = 1.0
    # Width in characters of the live view's progress bar and buffer gauge: fits an 80-column terminal.
    display_bar_width: int = 30
    # Most rows in the -v peer table (fastest first): max_peers by default, so nobody is hidden.
    peer_table_rows: int = 50

    # --- hostile peers (tasks/connections.py, docs/reliability.md) -------------------------------
    # Incoming connections take at most this share of max_peers: strangers that connect and idle
    # cannot take every slot and lock out the peers we call (tests/hostile/test_connection_flood.py).
    max_incoming_share: float = 0.75


DEFAULT_CONFIG = Config()
