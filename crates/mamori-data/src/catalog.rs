//! The named datasets mamori knows: their files, official mirrors, pinned SHA-256 sums and
//! class names. Registered in one place: [`DATASETS`].

/// What a pinned SHA-256 is computed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hashed {
    /// The bytes of the file as distributed (the `.gz` itself).
    Raw,
    /// The decompressed content (used where the compressed bytes are not reproducible).
    Decompressed,
}

/// One file of a named dataset.
#[derive(Clone, Copy, Debug)]
pub struct FileSpec {
    /// File name, both on the mirror and in `<data_dir>/<dataset>/`.
    pub name: &'static str,
    /// Pinned lowercase hex SHA-256.
    pub sha256: &'static str,
    /// What the digest covers.
    pub hashed: Hashed,
}

/// A named dataset.
#[derive(Clone, Copy, Debug)]
pub struct DatasetSpec {
    /// Shortcut name (`fashion-mnist`, `mnist`, `digits`); also the sub-directory.
    pub name: &'static str,
    /// Default mirror: the URL of the directory holding the files (ends with `/`).
    pub mirror: &'static str,
    /// The files.
    pub files: &'static [FileSpec],
    /// Class names, index = class id.
    pub class_names: &'static [&'static str],
    /// Human description.
    pub description: &'static str,
}

impl DatasetSpec {
    /// The file spec named `name`.
    pub fn file(&self, name: &str) -> Option<&'static FileSpec> {
        self.files.iter().find(|f| f.name == name)
    }
}

const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Every named dataset.
pub const DATASETS: &[DatasetSpec] = &[
    DatasetSpec {
        name: "fashion-mnist",
        mirror: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files: &[
            FileSpec { name: "train-images-idx3-ubyte.gz", sha256: "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", hashed: Hashed::Raw },
            FileSpec { name: "train-labels-idx1-ubyte.gz", sha256: "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", hashed: Hashed::Raw },
            FileSpec { name: "t10k-images-idx3-ubyte.gz", sha256: "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", hashed: Hashed::Raw },
            FileSpec { name: "t10k-labels-idx1-ubyte.gz", sha256: "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", hashed: Hashed::Raw },
        ],
        class_names: &["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
        description: "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 28x28 grey article images, 60,000 train / 10,000 test, 10 classes",
    },
    DatasetSpec {
        name: "mnist",
        mirror: "https://ossci-datasets.s3.amazonaws.com/mnist/",
        files: &[
            FileSpec { name: "train-images-idx3-ubyte.gz", sha256: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", hashed: Hashed::Raw },
            FileSpec { name: "train-labels-idx1-ubyte.gz", sha256: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", hashed: Hashed::Raw },
            FileSpec { name: "t10k-images-idx3-ubyte.gz", sha256: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", hashed: Hashed::Raw },
            FileSpec { name: "t10k-labels-idx1-ubyte.gz", sha256: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", hashed: Hashed::Raw },
        ],
        class_names: &DIGITS,
        description: "MNIST (LeCun, Cortes & Burges): 28x28 grey handwritten digits, 60,000 train / 10,000 test, 10 classes",
    },
    DatasetSpec {
        name: "digits",
        mirror: "https://raw.githubusercontent.com/scikit-learn/scikit-learn/main/sklearn/datasets/data/",
        files: &[FileSpec {
            name: "digits.csv.gz",
            // scikit-learn's .gz bytes are not pinned here (recompression changes them); the
            // decompressed CSV is.
            sha256: "6ebb3d2fee246a4e99363262ddf8a00a3c41bee6014c373ed9d9216ba7f651b8",
            hashed: Hashed::Decompressed,
        }],
        class_names: &DIGITS,
        description: "UCI optical digits as shipped by scikit-learn: 1,797 8x8 images (64 features, 0..16), 10 classes; split 75/25 with a fixed seed",
    },
];

/// The named dataset `name`, if mamori knows it.
pub fn spec(name: &str) -> Option<&'static DatasetSpec> {
    DATASETS.iter().find(|d| d.name == name)
}
