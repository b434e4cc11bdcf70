package layoutfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/ocibuild/layercache/internal/fsutil"
)

// StatsFile holds the hit and miss counters that pulls record. It is not
// part of the OCI image layout; tools that read the layout ignore it.
const StatsFile = "layercache-stats.json"

// statsLockName, like the index lock, is never swept.
const statsLockName = StatsFile + lockSuffix

// maxStatsSize bounds what ReadStats loads; the file is a few hundred bytes.
const maxStatsSize = 1 << 20

// ReadStats returns the contents of the stats file, or nil if there is
// none. It takes no lock: the file is only replaced by rename. A symlink
// or anything else but a regular file at its name counts as no file: its
// target is never read, and the next update replaces it.
func (p Path) ReadStats() ([]byte, error) {
	b, err := fsutil.ReadSmallFile(p.Join(StatsFile), maxStatsSize)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fsutil.ErrNotRegular) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", p.Join(StatsFile), err)
	}
	return b, nil
}

// UpdateStats rewrites the stats file under its lock: fn gets the current
// contents (nil if none) and returns the new ones. Concurrent processes are
// serialised, so counters they add up are never lost. Unlike index.json
// the file is not fsynced: counters are advice, not data.
func (p Path) UpdateStats(ctx context.Context, fn func(old []byte) ([]byte, error)) error {
	l, err := p.lock(ctx, statsLockName)
	if err != nil {
		return err
	}
	defer l.Unlock()
	old, err := p.ReadStats()
	if err != nil {
		return err
	}
	b, err := fn(old)
	if err != nil {
		return err
	}
	return p.replaceFile(StatsFile, b, false)
}
