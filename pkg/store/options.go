package store

import (
	"log/slog"
	"time"
)

// Option configures a Store opened by Open.
type Option func(*options) error

type options struct {
	durable bool
	logger  *slog.Logger
	now     func() time.Time
}

func makeOptions(opts []Option) (options, error) {
	o := options{
		logger: slog.New(slog.DiscardHandler),
		now:    time.Now,
	}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return options{}, err
		}
	}
	return o, nil
}

// WithDurable makes every committed blob durable before it is visible: the
// temp file is fsynced before the rename, and the blobs directory after it,
// as containerd's content store does. Use it for long-lived caches shared
// by many builds.
//
// By default blob data is not fsynced: every read is verified, so a blob
// torn by a power loss is detected, removed and fetched again, and a CI
// cache is written once and saved whole. index.json is always written
// durably.
func WithDurable() Option {
	return func(o *options) error {
		o.durable = true
		return nil
	}
}

// WithLogger sets where the store reports what it repairs on its own
// (corrupted blobs it removed, litter it swept). The default discards logs.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l == nil {
			l = slog.New(slog.DiscardHandler)
		}
		o.logger = l
		return nil
	}
}
